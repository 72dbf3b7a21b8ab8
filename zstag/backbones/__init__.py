"""Pre-trained audio backbones ported to torch (musicnn); weights live in models/<backbone>/."""
