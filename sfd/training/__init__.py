"""Training infrastructure around `SFDModule`: LightningCLI wiring, callbacks, the alternating DDP
strategy, the resumable wandb logger, `--ckpt_path last` and atomic checkpoint writes, and the memory
estimate `sfd fit` prints and checks."""
