"""The instructors' grader: check every submission, score it by a rubric, write a leaderboard.

``Codes/grade.py`` is its one entry point; nothing in the lessons imports this
package (it imports them: the kit's loaders, measuring and report schema). A
submission is one folder per student (``labs/homework.md``) holding
``benchmark.json`` (``Codes/benchmark.py --json``), the model files it lists
with their sidecar JSONs (``Codes/quantize_model.py``), and ``pi_run.json`` and
``pi_open.json`` (``Codes/mobile_net.py --json`` on the Raspberry Pi), or without a Pi ``pi_check.json``
(``tools/pi_check/pi_check.py --model``, the emulated Pi).

One submission folder goes through, in order:

- ``intake``: the folder, ``benchmark.json``, each model file and its sidecar,
  read as untrusted input (``untrusted``: links refused, sizes capped, numbers checked);
- ``model_checks``: each model file before anything loads it (zip bombs,
  load-time code, an operator allowlist);
- ``runner`` -> ``sandbox`` -> ``model_runner``: the student's models loaded, run and
  measured in one child process (each model with its own limits) that can always
  be stopped, never in the grader;
- ``scoring``: points by the ``rubric`` (``rubric.yaml``, package data), the
  parts handed in, the Pi runs (``pi_runs``) or the emulated Pi check (``emulated_pi``), flags for claims
  that disagree;
  then, class-wide, the open target and possible copying;
- ``records``: what is kept of each model and student; ``shards``: a run kept
  as a record (``grade.py --shard I/N``) and N shards merged into one;
  ``leaderboard``: the ranking as CSV, Markdown, a plot and a terminal table.

One bad submission gives its reasons in the leaderboard; it never stops the run.

Example:
    from quantlab.grader import leaderboard, rubric, runner, sandbox, scoring
    marks = rubric.load_rubric(None)
    models = runner.ModelRunner(threads=2, measure=None, isolation=sandbox.isolation())
    baseline = runner.Baseline.measure(models)
    student = scoring.grade_student(Path("submissions/ada"), marks, baseline, models)
    print(leaderboard.summary_table([student]))
"""
