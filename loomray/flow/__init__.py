"""Flow matching itself: the CFM objective, EMA and learning-rate schedule
(``objective``), and the ODE samplers (``sampling``)."""
