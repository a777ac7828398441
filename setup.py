"""Ships the top-level ``properties/`` folder inside the wheel as ``recbole_llm.properties``.

All metadata lives in setup.cfg; only the package mapping needs code.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["recbole_llm", "recbole_llm.*"]) + ["recbole_llm.properties"],
    package_dir={"recbole_llm.properties": "properties"},
    package_data={"recbole_llm.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml", "hyper/*"]},
)
