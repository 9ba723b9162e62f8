"""Evaluation: classifiers and metrics by group. Import as ``import fairsample.evaluation as fe`` (never
``from fairsample import eval``, which would shadow the builtin)."""
