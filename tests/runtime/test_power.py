"""Power sources on sysfs-shaped trees the tests write (no machine here has a sensor), the meter's arithmetic
driven sample by sample with a fake clock, and real meter commands."""

import sys
from pathlib import Path

import pytest

from edgeskip.runtime.power import EnergyMeter, PowerError, counter_delta, none_found_note, open_power, trapezoid


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return root


def rapl(tmp_path, package0=1_000_000, package1=2_000_000, psys=None, wrap=262_143_328_850):
    files = {
        "class/powercap/intel-rapl:0/name": "package-0",
        "class/powercap/intel-rapl:0/energy_uj": str(package0),
        "class/powercap/intel-rapl:0/max_energy_range_uj": str(wrap),
        "class/powercap/intel-rapl:0:0/name": "core",  # a sub-zone: inside package-0, never counted again
        "class/powercap/intel-rapl:0:0/energy_uj": "5",
        "class/powercap/intel-rapl:1/name": "package-1",
        "class/powercap/intel-rapl:1/energy_uj": str(package1),
        "class/powercap/intel-rapl:1/max_energy_range_uj": str(wrap),
        "class/powercap/intel-rapl-mmio:0/name": "package-0",  # the MMIO interface repeats package-0
        "class/powercap/intel-rapl-mmio:0/energy_uj": "7",
    }
    if psys is not None:
        files |= {"class/powercap/intel-rapl:2/name": "psys", "class/powercap/intel-rapl:2/energy_uj": str(psys)}
    return write(tmp_path, files)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_counter_delta_unwraps_and_refuses_a_counter_that_goes_backwards():
    assert counter_delta(10.0, 12.5, None) == 2.5
    assert counter_delta(90.0, 5.0, 100.0) == pytest.approx(15.0)  # wrapped once
    with pytest.raises(PowerError, match="went backwards"):
        counter_delta(10.0, 9.0, None)
    assert trapezoid(0.0, 2.0, 0.5, 4.0) == pytest.approx(1.5)


def test_powercap_sums_top_level_zones_once_and_unwraps(tmp_path):
    root = rapl(tmp_path, wrap=10_000_000)  # a 10 J counter range, to wrap within the test
    src = open_power("powercap", root)
    assert src.description == "powercap (package-0 + package-1)" and src.kind == "energy"
    clock = Clock()
    meter = EnergyMeter(src, clock=clock)
    meter.sample()  # 1 J + 2 J
    write(
        root, {"class/powercap/intel-rapl:0/energy_uj": "4000000", "class/powercap/intel-rapl:1/energy_uj": "1000000"}
    )
    clock.t += 2.0
    meter.sample()  # package-0: +3 J; package-1 wrapped: 10 - 2 + 1 = +9 J
    e = meter.energy()
    assert e.joules == pytest.approx(12.0) and e.seconds == pytest.approx(2.0) and e.mean_w == pytest.approx(6.0)
    assert open_power("powercap:package-1", root).channels == ["package-1"]
    with pytest.raises(PowerError, match="no powercap zone dram here; there are: package-0, package-1"):
        open_power("powercap:dram", root)


def test_psys_alone_where_it_exists(tmp_path):
    assert open_power("auto", rapl(tmp_path, psys=1)).description == "powercap (psys)"


def test_a_counter_going_backwards_without_a_range_is_refused(tmp_path):
    root = write(
        tmp_path, {"class/powercap/amd-rapl:0/name": "package-0", "class/powercap/amd-rapl:0/energy_uj": "500"}
    )
    meter = EnergyMeter(open_power("powercap", root), clock=Clock())
    meter.sample()
    write(root, {"class/powercap/amd-rapl:0/energy_uj": "400"})
    with pytest.raises(PowerError, match="went backwards"):
        meter.sample()


def test_unreadable_counter_is_one_line(tmp_path):
    root = rapl(tmp_path)
    (root / "class/powercap/intel-rapl:0/energy_uj").write_text("garbage\n")
    with pytest.raises(PowerError, match=r"energy_uj holds 'garbage', not a number"):
        open_power("powercap", root)


def test_ina231_sums_the_xu4_rails_and_enables_them(tmp_path):
    base = "bus/i2c/drivers/INA231"
    root = write(
        tmp_path,
        {
            f"{base}/3-0040/sensor_W": "2.5",
            f"{base}/3-0040/enable": "0",
            f"{base}/3-0041/sensor_W": "0.25",
            f"{base}/3-0041/enable": "1",
            f"{base}/3-0044/sensor_W": "0.125",
            f"{base}/3-0045/sensor_W": "0.125",
        },
    )
    src = open_power("auto", root)
    assert src.description == "ina231 (A15 + mem + GPU + A7)" and src.kind == "power"
    assert (root / f"{base}/3-0040/enable").read_text().strip() == "1"  # enabled on open
    clock = Clock()
    meter = EnergyMeter(src, clock=clock)
    meter.sample()
    write(root, {f"{base}/3-0040/sensor_W": "4.5"})
    clock.t += 0.5
    meter.sample()  # 3 W then 5 W over 0.5 s: 2 J
    assert meter.energy().joules == pytest.approx(2.0)
    assert open_power("ina231:A7,A15", root).channels == ["A7", "A15"]


def test_hwmon_counts_one_channel_never_a_guessed_sum(tmp_path):
    ina3221 = {
        "class/hwmon/hwmon1/name": "ina3221",
        "class/hwmon/hwmon1/in1_label": "VDD_IN",
        "class/hwmon/hwmon1/in1_input": "5000",  # mV
        "class/hwmon/hwmon1/curr1_input": "1200",  # mA
        "class/hwmon/hwmon1/in2_label": "VDD_CPU_GPU_CV",
        "class/hwmon/hwmon1/in2_input": "5000",
        "class/hwmon/hwmon1/curr2_input": "400",
    }
    root = write(tmp_path / "jetson", ina3221)
    src = open_power("auto", root)  # the board's input rail, not input + the rail it feeds
    assert src.description == "hwmon (ina3221:VDD_IN)" and src.read() == [pytest.approx(6.0)]
    assert open_power("hwmon:ina3221:VDD_CPU_GPU_CV", root).read() == [pytest.approx(2.0)]
    assert open_power("hwmon:ina3221", root).channels == ["ina3221:VDD_IN", "ina3221:VDD_CPU_GPU_CV"]
    two = write(
        tmp_path / "two",
        {
            "class/hwmon/hwmon0/name": "pmic",
            "class/hwmon/hwmon0/power1_input": "1500000",  # µW
            "class/hwmon/hwmon0/power2_input": "500000",
        },
    )
    with pytest.raises(PowerError, match=r"2 power channels \(pmic:power1, pmic:power2\) and none is plainly"):
        open_power("hwmon", two)
    assert open_power("hwmon:pmic:power2", two).read() == [pytest.approx(0.5)]
    energy = write(
        tmp_path / "e", {"class/hwmon/hwmon3/name": "amd_energy", "class/hwmon/hwmon3/energy1_input": "3000000"}
    )
    src = open_power("hwmon", energy)
    assert src.kind == "energy" and src.read() == [pytest.approx(3.0)]
    with pytest.raises(PowerError, match="no hwmon device 'nope'"):
        open_power("hwmon:nope", energy)


def test_auto_finds_nothing_here_and_says_so_in_one_line(tmp_path):
    assert open_power("auto", tmp_path) is None
    note = none_found_note(tmp_path)
    assert "\n" not in note and "no power source on this machine" in note


@pytest.mark.parametrize("spec", ["rapl", "powercap:", "auto:x"])
def test_unknown_or_empty_sources_are_one_line(tmp_path, spec):
    with pytest.raises(PowerError) as e:
        open_power(spec, tmp_path)
    assert "\n" not in str(e.value)


def py(code: str) -> str:
    return f"{sys.executable} -c '{code}'"


def test_a_one_shot_meter_command_is_run_per_sample(tmp_path):
    f = tmp_path / "watts"
    f.write_text("2.0 W\n")
    src = open_power(f"cmd:cat {f}")
    clock = Clock()
    meter = EnergyMeter(src, clock=clock)
    meter.sample()
    f.write_text("4000 mW\n")
    clock.t += 1.0
    meter.sample()
    assert meter.energy().joules == pytest.approx(3.0)


def test_a_streaming_meter_command_of_joules(tmp_path):
    code = 'import sys, time\nfor j in range(1000):\n    print(f"{j * 0.5} J", flush=True); time.sleep(0.01)'
    (tmp_path / "m.py").write_text(code)
    src = open_power(f"cmd:{sys.executable} {tmp_path / 'm.py'}")
    try:
        assert src.kind == "energy"
        meter = EnergyMeter(src, interval=0.02).start()
        import time

        time.sleep(0.3)
        e = meter.stop()
        assert e.samples >= 3 and 2.0 < e.joules < 30.0  # ~50 J/s of a counter read for ~0.3 s
    finally:
        src.close()


@pytest.mark.parametrize(
    "command, message",
    [
        ("echo banana", "printed 'banana', not a number with W or J"),
        ("exit 3", r"printed nothing \(exit 3\)"),
        ("echo -- -5 W", "not a number with W or J"),
    ],
)
def test_bad_meter_commands_are_one_line(command, message):
    with pytest.raises(PowerError, match=message):
        open_power(f"cmd:{command}")


def test_a_meter_that_dies_mid_run_stops_the_span_with_its_reason(tmp_path):
    code = 'import time\nprint("3 W", flush=True)\ntime.sleep(0.3)\nprint("oops", flush=True)\ntime.sleep(5)'
    (tmp_path / "m.py").write_text(code)
    src = open_power(f"cmd:{sys.executable} {tmp_path / 'm.py'}")
    try:
        meter = EnergyMeter(src, interval=0.02).start()
        import time

        time.sleep(0.6)
        with pytest.raises(PowerError, match="printed 'oops'"):
            meter.stop()
    finally:
        src.close()


def metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_serve_exports_energy_and_keeps_serving_when_the_meter_breaks(bundle, digits_splits, tmp_path):
    from tests.runtime.daemon_process import Server, digit_images

    stop = tmp_path / "stop"
    code = (
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    print('3 W', flush=True); time.sleep(0.01)\n"
        "print('the meter lost its USB link', flush=True); time.sleep(60)"
    )
    (tmp_path / "meter.py").write_text(code)
    server = Server(bundle, "--power", f"cmd:{sys.executable} {tmp_path / 'meter.py'} {stop}")
    try:
        assert "energy command (" in server.banner
        first = server.call("/metrics")[1].decode()
        import time

        time.sleep(0.3)
        second = server.call("/metrics")[1].decode()
        a, b = (metric(t, "edgeskip_energy_joules_total") for t in (first, second))
        assert b - a == pytest.approx(0.9, rel=0.35) and metric(second, "edgeskip_energy_up") == 1.0  # 3 W x 0.3 s
        stop.touch()
        time.sleep(0.5)
        broken = server.call("/metrics")[1].decode()
        assert metric(broken, "edgeskip_energy_up") == 0.0
        time.sleep(0.1)
        assert metric(server.call("/metrics")[1].decode(), "edgeskip_energy_joules_total") == metric(
            broken, "edgeskip_energy_joules_total"
        )  # the counter stops where the source failed
        status, out = server.infer(digit_images(digits_splits, 1).tobytes())
        assert status == 200 and out["top"], out  # and the service goes on
        assert server.stop() == 0
        log = server.proc.stderr.read()
        assert "printed 'the meter lost its USB link'" in log and "keeps its last value" in log
    finally:
        server.kill()


def test_serve_with_a_bad_power_source_is_one_line_exit_2(bundle):
    from tests.conftest import cli

    res = cli("serve", bundle, "--port", "0", "--power", "cmd:echo nope", timeout=120)
    assert res.returncode == 2 and "printed 'nope'" in res.stderr and "Traceback" not in res.stderr
