"""Tools that regenerate the shipped models in ``models/``: fits, the Zuo selections, model cards.

Run from the repository root (``python -m tools.shipped_models.<module> --help``); see README.md here.

    common       where the models live (``MODELS``), the error table of a card, equal candidate specs
    refit        refit a model from its fit.yaml (``aceserver fit``'s workflow) and rewrite its card
    zuo_recipe   the Zuo et al. (2020) selection recipe: candidate grid, targets, score
    zuo_select   select a zuo-<El> model by 5-fold cross-validation and fit it
    zuo_cards    zuo-<El> cards and study plots from the stored results; the tables of models/README.md
"""
