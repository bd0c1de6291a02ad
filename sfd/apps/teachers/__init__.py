"""Training the teachers the applications forget from: the class-conditional pixel DDPM (`pixel`),
the VAE (`vae`), the text-conditioned teacher (`text`), the two built together (`text_teacher`)
and the up-front checks of their settings and folders (`checks`).
"""
