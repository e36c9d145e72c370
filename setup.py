from setuptools import find_packages, setup

# The test tools are also the development tools (pytest, ruff, the parity and data packages).
TEST_REQUIRES = ["pytest", "timm>=1.0", "scikit-image", "scikit-learn", "matplotlib", "scipy", "ruff>=0.17,<0.18"]
# ONNX export and its ONNX Runtime check (lookwhere_hf.export): PyPI wheels, ~5 s to install on CPython 3.11; tested
# with onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0.
EXPORT_REQUIRES = ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"]
# `lookwhere-hf app` (lookwhere_hf.app): the Gradio page; tested with gradio 6.31.0, gradio_client 2.7.2. The tests
# drive it over HTTP (gradio_client) and in headless Chromium (selenium + Debian's chromium / chromium-driver, .ci/run).
APP_REQUIRES = ["gradio>=6.0,<7", "matplotlib"]
APP_TEST_REQUIRES = APP_REQUIRES + ["gradio_client>=2.0", "selenium>=4.10"]

setup(
    name="lookwhere_hf",
    version="0.1.0",
    description="LookWhere (learning where to look and what to see) as a Hugging Face transformers model family",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"lookwhere_hf": ["metrics/*/*.py", "assets/**/*", "templates/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.17",
        "datasets>=3.0",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "huggingface_hub",
        "numpy",
        "Pillow",
        "tqdm",
    ],
    extras_require={
        "plots": ["matplotlib"],
        "export": EXPORT_REQUIRES,
        "app": APP_REQUIRES,
        "test": TEST_REQUIRES + EXPORT_REQUIRES + APP_TEST_REQUIRES,
        "dev": TEST_REQUIRES + EXPORT_REQUIRES + APP_TEST_REQUIRES,
    },
    entry_points={"console_scripts": ["lookwhere-hf=lookwhere_hf.cli:main"]},
)
