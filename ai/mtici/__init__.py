"""``mtici``: dual-view mTICI reperfusion grading after CVFSNet (Xu et al., MedIA 2025)."""
