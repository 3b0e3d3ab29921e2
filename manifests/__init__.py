"""Scripts that turn folders of audio / images into the manifests the d2v_plugin tasks read."""
