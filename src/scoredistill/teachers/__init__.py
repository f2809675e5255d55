"""Teachers: exact Gaussian mixtures, named testbeds and learned denoisers."""
