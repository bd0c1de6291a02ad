"""Training the teachers the applications forget from: the class-conditional pixel DDPM (`pixel`),
the VAE (`vae`), the text-conditioned teacher (`text`) and the two built together (`text_teacher`).
"""
