"""quantlab.arguments: every script's flags are checked by their type=, and a bad one is one line (a KitError)."""

from __future__ import annotations

import pytest

from quantlab import arguments
from quantlab.errors import KitError


def parser() -> arguments.Parser:
    parser = arguments.Parser(description="test")
    parser.add_argument("--runs", type=arguments.int_at_least(1), default=5)
    parser.add_argument("--warmup", type=arguments.int_at_least(0), default=0)
    parser.add_argument("--split", type=arguments.fraction)
    parser.add_argument("--plot", type=arguments.file_ending(".png"))
    parser.add_argument("--engine", choices=("x86", "qnnpack"))
    return parser


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "0"], "--runs must be at least 1, got 0"),
        (["--runs", "two"], "--runs must be a whole number, got 'two'"),
        (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        (["--split", "1.5"], "--split must be a fraction in (0, 1], got 1.5"),
        (["--plot", "out.jpg"], "--plot out.jpg must end in .png"),
        (["--engine", "nope"], "--engine invalid choice: 'nope'"),
        (["--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_a_bad_flag_is_a_kit_error_naming_it(argv, message):
    with pytest.raises(KitError) as raised:
        parser().parse_args(argv)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_good_flags_are_converted():
    args = parser().parse_args(["--runs", "3", "--warmup", "0", "--split", "0.5", "--plot", "a.PNG"])
    assert (args.runs, args.warmup, args.split, str(args.plot)) == (3, 0, 0.5, "a.PNG")
