"""Applications built on the library: data sets, teacher training, the digits demo and its report."""
