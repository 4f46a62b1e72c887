"""Latent-space training: images encoded once by a KL autoencoder, trained many times.

``autoencoder``: diffusers' ``AutoencoderKL`` from a folder, a single LDM-layout
file or a hub id, and the authors' ``ae.*`` weights converted to it. ``store``:
latent shards (posterior mean and std per image row) and the dataset that draws
posterior samples from them. ``encode``: `loomray encode`, the Ray job that
writes the shards. ``decode``: latents back to images for samples and FID.
"""
