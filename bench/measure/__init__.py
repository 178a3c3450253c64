"""Measurements: gradient variance, throughput, kernel speed and scaling, training convergence."""
