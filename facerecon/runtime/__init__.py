"""Inference without PyTorch: the network and MTCNN exported to ONNX, run by ONNX Runtime.

* :mod:`facerecon.runtime.export` (needs torch): ``export_onnx`` writes a checkpoint's network as
  one ONNX file (graph operations as fixed-degree gathers, constants baked, dynamic batch);
  ``export_mtcnn`` writes MTCNN's three networks.
* :mod:`facerecon.runtime.session` (numpy and onnxruntime only): ``MeshRuntime`` runs an exported
  network on a batch of crops; ``OnnxMTCNN`` runs the detection cascade; ``reconstruct_crops``
  turns the network's output into meshes in image px.

Nothing in this package's ``__init__`` is imported eagerly, so ``import facerecon.runtime.session``
never imports torch (``tests/test_runtime.py`` checks it in a fresh process).
"""
