#!/usr/bin/env bash
# The reference implementations the dense-pipeline tests compare with (tests/test_mmseg.py), as the
# official LSNet segmentation ran them: mmcv 1.7.2 (pure Python: no compiled ops, which the
# pipeline classes do not import) and mmsegmentation 0.30.0. Run inside the project's environment,
# after `pip install -e ".[torch,test]"` (which brings torch, torchvision and OpenCV).
#
# pip cannot express this in pyproject.toml: mmcv 1.7.2 ships only a setup.py that imports
# pkg_resources, gone from setuptools >= 81, so its build needs an older setuptools
# (--build-constraint: pip >= 25.3 sets it in the isolated build environment only; the project's setuptools is not
# touched); and its metadata asks for opencv-python, which would install a second cv2 over the
# pinned opencv-python-headless, so it is installed without dependencies and these are listed here.
set -euo pipefail
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "setuptools<70" > "$constraint"
MMCV_WITH_OPS=0 python -m pip install -q --no-deps --no-cache-dir --build-constraint "$constraint" mmcv==1.7.2
# mmcv's own dependencies (less OpenCV, already pinned by the project)
python -m pip install -q "addict==2.4.0" "yapf==0.40.1" "pyyaml>=6" "packaging>=23"
# mmsegmentation's: prettytable (its dataset module imports it); mmcls only for its backbones, not used
python -m pip install -q "prettytable>=3"
python -m pip install -q --no-deps mmsegmentation==0.30.0 mmcls==0.25.0
python - <<'PY'
import cv2, mmcv, mmseg
print(f"references: mmcv {mmcv.__version__}, mmsegmentation {mmseg.__version__}, OpenCV {cv2.__version__}")
PY
