"""Whole jobs over trained runs, as library functions with typed results: sample a diffusion run into an
image folder (:mod:`.sampling`), measure an autoencoder's reconstructions on a data set
(:mod:`.autoencoder_quality`).

This layer sits above training, conversion and run folders (it loads what they write) and below the
commands: ``eval.sample`` and ``eval.autoencoder`` parse flags and print, ``eval.demo`` calls the same
functions; none of them chains another command through its ``main``.
"""
