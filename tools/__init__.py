"""Developer tools run from the repository root (not part of the installed aceserver package).

    numbers_snapshot   every number the evaluator and the exporters produce, recorded and compared
                       exactly across refactors (``python -m tools.numbers_snapshot --help``)
    shipped_models/    regenerate the models in models/: fits, the Zuo selections, model cards
                       (``python -m tools.shipped_models.<module> --help``; README.md there)
"""
