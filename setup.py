from setuptools import find_packages, setup

setup(
    name="omni_npu_quant",
    version="0.1.0",
    description="Ascend-NPU-first quantization backends for vLLM (int8 W8A8, MXFP8, MXFP4, dual-scale MXFP4)",
    packages=find_packages(include=["omni_npu_quant", "omni_npu_quant.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "ml_dtypes", "matplotlib", "transformers==5.20.2", "tokenizers", "diffusers", "torchao==0.18.0"],
        "vllm": ["vllm==0.33.0"],
        "msmodelslim": ["msmodelslim==26.1.0", "transformers"],
        "gpu": ["triton>=3.6"],
        "calibrate": ["transformers", "diffusers"],
    },
    entry_points={
        "console_scripts": ["omni-npu-quant=omni_npu_quant.cli.main:main"],
        "vllm.general_plugins": ["omni_npu_quant = omni_npu_quant.integrations.vllm.plugin:register"],
    },
)
