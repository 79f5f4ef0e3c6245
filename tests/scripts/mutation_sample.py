"""Print a random sample of mutmut's mutant names that have not been checked yet, for `mutmut run NAME...`.

Every mutant of jconv/lowerings/ and jconv/spec.py would take about a day on 2 cores ([tool.mutmut] in
pyproject.toml selects the tests), so docs/testing.md's counts come from a sample:

    pip install mutmut==3.8.1
    mutmut run                       # generates the mutants and their test map; stop it once mutants run
    mutmut run $(python tests/scripts/mutation_sample.py --count 300 --seed 2026)
    mutmut results                   # survivors; `mutmut show NAME` prints one's diff
"""

import argparse
import random
import subprocess


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    listing = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True)
    unchecked = [line.split(":")[0].strip() for line in listing.stdout.splitlines() if line.endswith("not checked")]
    random.seed(args.seed)
    print("\n".join(random.sample(unchecked, min(args.count, len(unchecked)))))


if __name__ == "__main__":
    main()
