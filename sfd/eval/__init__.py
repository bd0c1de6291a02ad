"""Evaluation (docs/method.md §6): samplers, forgetting metrics, the evaluation classifier, the
forgetting curve and concept-forgetting (text) metrics. Nothing here imports pipelines or apps."""
