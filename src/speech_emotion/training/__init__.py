"""Training: the run pipeline (frozen or fine-tuned), the head's fitting loop, checkpoints, cross-validation.

Nothing is imported eagerly: ``speech_emotion.training.config`` and ``run_folder`` stay torch-free
for readers of run folders (``ser monitor``, exports).
"""
