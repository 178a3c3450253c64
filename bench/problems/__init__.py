"""Problems: datasets, models and the exact-truth problems the benchmarks run on."""
