import warnings

# Avalanche imports qpsolvers for GEM, which this project does not use; its "no QP solver"
# warning on every command would only bury the one line an error gives.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
