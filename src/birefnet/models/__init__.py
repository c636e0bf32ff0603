"""Networks: backbones, blocks, the deformable convolution, the decoder and BiRefNet itself."""
