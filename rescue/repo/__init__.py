"""The image repository format (version 1): chunk store, indexes, manifests."""
