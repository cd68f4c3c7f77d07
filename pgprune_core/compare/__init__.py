"""``pgprune compare``: the same run across estimators x seeds x rates (x inits x budgets).
The grid's types (``grid``), the runner (``runner``), its report and figures
(``report``, ``plots``) and the command (``command``, registered through the command hook).
"""
