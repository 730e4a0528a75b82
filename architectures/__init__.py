"""Network builders that meet nnU-Net's network contract."""
