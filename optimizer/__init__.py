"""Network and session model, LP/MILP scheduler (pyomo and direct HiGHS), greedy and
uncontrolled methods, charging-profile emission and the independent schedule checker."""

from optimizer.pages import use_small_pages

# a scheduling process makes many large short-lived arrays: ordinary pages serve them faster
# than huge ones (optimizer/pages.py)
use_small_pages()
