"""Analyses that compute from trained models or fresh ones rather than only reading runs: the
theory checks, the one-step drifts of Q, Table 1's diagnostics and the optimizer comparison."""
