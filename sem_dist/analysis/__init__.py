"""Analysis: the robustness terms R_θ and R_δu (Definitions 1–2), Algorithm-1 snapshots, their
correlation with protection performance (Table 10, Figure 3), and figures."""
