"""Network and session model, LP/MILP scheduler (pyomo and direct HiGHS), greedy and
uncontrolled methods, charging-profile emission and the independent schedule checker."""
