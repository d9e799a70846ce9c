"""Memory budgets: allocation tracing now; device probes, profiles and the planner with the budget issue."""
