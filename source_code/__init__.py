"""Explainable image captioning: EfficientNetV2 features + GloVe LSTM decoder, with Grad-CAM, saliency and ACE."""
