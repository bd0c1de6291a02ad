"""Applications built on the library, in rooms that import only the rooms below them.

    data      labelled images (digits, .npz, CIFAR-10) and captioned sets (digits, Fashion-MNIST)
    teachers  training the teachers the applications forget from (pixel DDPM, VAE, text teacher)
    harness   what every application shares: settings and presets, the content-hash cache, the
              phases helper, the workspace (split, teacher, classifier), stage 1 / stage 2 runs,
              the methods `sfd compare` runs, forgetting curves, evaluation, report folders
    demo, compare, demo_text
              the three applications (`sfd demo`, `sfd compare`, `sfd demo-text`): leaves that
              never import each other; each `run_*` reads as its list of phases

tests/test_layers.py keeps the plan.
"""
