"""shared-subspace: shared subspaces in neural-network weights and continual learning with a shared LoRA subspace.

One concept per module:
    runtime   fast/full mode, cache folder, device, threads, seeds
    subspace  fit / project / reconstruct / principal angles / save-load of a basis
    nulls     null spectra (i.i.d. noise, Marchenko-Pastur, shuffled) and reconstruction controls
    plots     one style and every figure
    digits    sklearn digits tasks and small MLPs
    toy       planted-subspace linear/logistic tasks trained by gradient descent (notebooks 00, 01)
    widgets   ipywidgets explorers over precomputed results
"""
__version__ = "0.1.0"
