"""The protocol fuzzer of tests/server/test_fuzz.py, run for longer: random clients on
/v1/stream, /v1/listen and /v1/realtime against one in-process server (FakeModel), beside a
witness client that must get exactly its transcript.

    cd bench && ../.venv/bin/python fuzz.py [--minutes 10] [--seed 0] [--steps 50]
                                            [--no-shrink] [--keep-going]

Runs rounds of `ROUND_EXAMPLES` state-machine runs, round r with Hypothesis seed `--seed` + r,
until `--minutes` have passed (checked between rounds), then prints what was sent and received.
A failed invariant prints the failing run's steps, shrunk unless `--no-shrink` (shrinking
re-runs the server, often for a minute or two past `--minutes`), and the frames of every
client of the smallest failing run; then the fuzzer stops, unless `--keep-going`. Exit status
1 when an invariant failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "server"), str(TESTS / "engine")]  # the test helpers

import speech  # noqa: E402
from hypothesis import HealthCheck, Phase, seed, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402
from test_fuzz import FuzzServer, machine_for, witness_clips  # noqa: E402

ROUND_EXAMPLES = 5  # runs per round: the time limit is checked between rounds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the first round")
    parser.add_argument("--steps", type=int, default=50, help="steps per state-machine run")
    parser.add_argument("--no-shrink", action="store_true", help="report failures unshrunk")
    parser.add_argument("--keep-going", action="store_true", help="go on after a failure")
    return parser.parse_args()


def round_settings(steps: int, shrink: bool) -> settings:
    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if shrink else ())
    return settings(
        max_examples=ROUND_EXAMPLES,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def describe(exc: BaseException, checks: list[str]) -> str:
    """A failure: Hypothesis's verdict and the steps of the failing run (its notes), then the
    shortest of the failed checks (shrinking re-runs the server: the last runs are the
    smallest), with the frames of every client of its run."""
    lines = traceback.format_exception_only(exc)
    for sub in [exc, *getattr(exc, "exceptions", [])]:
        lines += [f"{note}\n" for note in getattr(sub, "__notes__", [])]
    distinct = list(dict.fromkeys(checks))
    if distinct:
        lines.append(f"\n{len(distinct)} failed checks; the shortest:\n{min(distinct, key=len)}\n")
    return "".join(lines)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sentences = [speech.espeak(text, Path(tmp)) for text in speech.SENTENCES]
    failures: list[str] = []
    t0 = time.monotonic()
    deadline = t0 + 60.0 * args.minutes
    rounds = 0
    with FuzzServer(witness_clips(sentences)) as harness:
        machine = machine_for(harness)
        while time.monotonic() < deadline and (args.keep_going or not failures):
            round_seed = args.seed + rounds
            rounds += 1
            try:
                run_state_machine_as_test(
                    seed(round_seed)(machine),
                    settings=round_settings(args.steps, not args.no_shrink),
                )
            except Exception as exc:  # an invariant failed
                report = describe(exc, harness.failures)
                failures.append(f"seed {round_seed}:\n{report}")
                print(f"FAILURE (seed {round_seed}):\n{report}", flush=True)
                harness.failures.clear()
            stats = harness.stats
            print(
                f"{time.monotonic() - t0:7.1f} s  round {rounds}: {stats['runs']} runs, "
                f"{stats['steps']} steps, {stats['witness sessions']} witness sessions",
                flush=True,
            )
    stats = harness.stats
    print(f"\nfuzzed {time.monotonic() - t0:.0f} s, seeds {args.seed}..{args.seed + rounds - 1}")
    for key in ("runs", "steps", "frames sent", "bytes sent", "messages received"):
        print(f"  {key:<22} {stats[key]}")
    for key in sorted(
        k for k in stats if k.startswith(("connections", "closed", "error", "witness"))
    ):
        print(f"  {key:<22} {stats[key]}")
    seeds = ", ".join(failure.split(":", 1)[0] for failure in failures)
    print(f"  {'failures':<22} {len(failures)}" + (f" ({seeds}; above)" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
