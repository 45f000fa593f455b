"""`richkd study SPEC`: a grid of arms x seeds from one spec file, over shared prepare steps (a teacher, target
caches), run several at a time, resumable after a kill, ending in results.json / results.md (mean ± std over
seeds, paired comparisons with 95 % t-intervals) and the HTML report.

Owns the spec format and its checks (`spec`), the grid of `richkd train` runs and the process pool (`grid`), the
predictions / robustness / analyses of the runs (`post`), the seed statistics (`stats`), the results tables
(`results`) and the order of it all (`runner`). Every step is an existing command; nothing here trains or
evaluates a model itself.
"""

from richkd.study.runner import StudyOutcome, describe_plan, run_study
from richkd.study.spec import StudySpec, load_spec

__all__ = ["StudyOutcome", "StudySpec", "describe_plan", "load_spec", "run_study"]
