"""diagnostics loads its submodules on first use: fit's misspecification detector does not
pull in scipy.stats and matplotlib (~50 MB of peak memory; benchmarks/RESULTS.md, "Issue
18: training speed of the accurate preset"), and the package's names keep their meaning."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_detector_module_imports_without_scipy_stats_and_matplotlib():
    code = ("import sys, diagnostics.misspecification; "
            "print(sorted(m for m in ('scipy.stats', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=True)
    assert out.stdout.strip() == "[]", out


def test_package_names_stay_the_functions_after_their_submodules_load():
    import diagnostics.c2st
    import diagnostics.mmd
    import diagnostics.report  # imports diagnostics.sbc (the submodule) on the way
    import diagnostics.sbc
    from diagnostics import c2st, mmd, sbc, tarp_coverage

    assert callable(c2st) and c2st.__module__ == "diagnostics.c2st"
    assert callable(mmd) and mmd.__module__ == "diagnostics.mmd"
    assert callable(sbc) and sbc.__module__ == "diagnostics.sbc"
    assert diagnostics.sbc is sbc and tarp_coverage.__module__ == "diagnostics.tarp"
    assert sys.modules["diagnostics.sbc"].ecdf_band  # the submodule is still importable
    assert set(diagnostics.__all__) <= set(dir(diagnostics))
