"""Evaluation: classifiers and metrics by group. Import as ``import fairsample.eval as fe`` (never
``from fairsample import eval``, which would shadow the builtin)."""
