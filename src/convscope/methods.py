"""The CAM methods of the engine (:mod:`convscope.cam`) by name: plain data without torch, so that the figures
that only draw and the report can name them without importing the engine."""

# Computed from the activations and gradients of one forward and one backward pass, however many are requested.
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam", "eigengradcam")
# EigenCAM needs only the forward; Score-CAM and Ablation-CAM one more forward per image and channel of the layer.
PERTURBATION_METHODS = ("scorecam", "ablationcam")
METHODS = (*GRADIENT_METHODS, "eigencam", *PERTURBATION_METHODS)
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "Grad-CAM element-wise",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGrad-CAM",
    "eigencam": "EigenCAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
}
# The pytorch-grad-cam 1.5.7 class each method reproduces (tests/test_cam_methods.py holds them equal).
REFERENCE_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGradCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
