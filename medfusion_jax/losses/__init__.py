"""Training losses of Medfusion: SSIM, the autoencoder reconstruction loss, GAN losses, diffusion loss."""
