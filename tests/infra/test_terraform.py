"""Offline checks of the Terraform in infra/terraform (issue #11).

Static checks read every file with python-hcl2: every file parses, every ``var.X`` is
declared, every variable has a type and a description, module calls pass exactly the called
module's variables (and every required one), and the tfvars set only declared variables. Each
checker returns a list of problems naming the file and variable, and is shown to catch its bug
on a small broken tree.

The validation checks run the real ``terraform`` binary on a copy of a ``variables.tf`` alone:
variables need no provider, so ``terraform init -backend=false`` and ``terraform plan`` work
offline, and ``plan`` evaluates the validation blocks. Each bad value must be refused with its
error message, and the committed tfvars must pass. Without ``terraform`` those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
JOB_TEMPLATE = REPO / "infra" / "prefect" / "gpu-job-template.json"

# Plain Python values: string literals without their quotes, blocks without markers, no
# comments. Expressions stay strings wrapped in ${...}.
HCL_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
MODULE_META_ARGUMENTS = {"source", "version", "count", "for_each", "providers", "depends_on"}
VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")


# --- helpers -------------------------------------------------------------------------------


def rel(path: Path, base: Path = REPO) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


SHARED = "_shared"  # envs/_shared: the files every env root links (checked through them)


def tf_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.tf")
                  if ".terraform" not in p.parts and SHARED not in p.parts)


def tf_module_dirs(base: Path) -> list[Path]:
    """Every directory holding .tf files: the modules and the roots."""
    return sorted({p.parent for p in tf_files(base)})


def root_dirs(base: Path) -> list[Path]:
    return (
        sorted(d for d in (base / "envs").iterdir() if d.is_dir() and d.name != SHARED)
        if (base / "envs").is_dir()
        else []
    )


def load_hcl(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=HCL_OPTIONS)


def blocks(doc: dict, kind: str) -> list[tuple[str, dict]]:
    """(label, body) of every one-label block of a kind (variable, module, output)."""
    found = []
    for entry in doc.get(kind, []):
        for label, body in entry.items():
            found.append((label, body))
    return found


def strings_in(value) -> list[str]:
    """Every string in a parsed value, keys included (a map key can be an expression)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def declared_variables(module_dir: Path) -> dict[str, dict]:
    declared: dict[str, dict] = {}
    for path in tf_files(module_dir):
        if path.parent != module_dir:
            continue
        for name, body in blocks(load_hcl(path), "variable"):
            declared[name] = body
    return declared


def module_files(module_dir: Path) -> list[Path]:
    return [p for p in tf_files(module_dir) if p.parent == module_dir]


# --- the checkers ----------------------------------------------------------------------------


def parse_problems(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        try:
            load_hcl(path)
        except Exception as error:  # noqa: BLE001 - any parser error is the finding
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            problems.append(f"{rel(path)}: does not parse: {type(error).__name__}: {first_line}")
    return problems


def variable_problems(module_dir: Path) -> list[str]:
    """Undeclared var.X references; variables without a type or a description."""
    problems = []
    declared = declared_variables(module_dir)
    for name, body in declared.items():
        where = next(
            rel(p)
            for p in module_files(module_dir)
            if name in dict(blocks(load_hcl(p), "variable"))
        )
        if not body.get("type"):
            problems.append(f"{where}: variable {name!r} has no type")
        description = body.get("description")
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{where}: variable {name!r} has no description")
    for path in module_files(module_dir):
        # Only expressions (${...}) can reference a variable; plain text may mention var.X.
        refs = {ref for s in strings_in(load_hcl(path)) if "${" in s for ref in VAR_REF.findall(s)}
        for ref in sorted(refs - declared.keys()):
            problems.append(
                f"{rel(path)}: var.{ref} is referenced but not declared in {rel(module_dir)}"
            )
    return problems


def module_call_problems(module_dir: Path) -> list[str]:
    """Module blocks pass only declared variables of the called module, and all required ones."""
    problems = []
    for path in module_files(module_dir):
        for name, body in blocks(load_hcl(path), "module"):
            source = body.get("source", "")
            if not source.startswith(("./", "../")):
                problems.append(
                    f"{rel(path)}: module {name!r}: source {source!r} is not a local path"
                )
                continue
            called = (module_dir / source).resolve()
            if not called.is_dir():
                problems.append(f"{rel(path)}: module {name!r}: source {source!r} does not exist")
                continue
            variables = declared_variables(called)
            passed = set(body) - MODULE_META_ARGUMENTS
            for arg in sorted(passed - variables.keys()):
                problems.append(
                    f"{rel(path)}: module {name!r} passes {arg!r}, "
                    f"which is not a variable of {rel(called)}"
                )
            required = {v for v, spec in variables.items() if "default" not in spec}
            for arg in sorted(required - passed):
                problems.append(
                    f"{rel(path)}: module {name!r} does not pass required variable {arg!r} "
                    f"of {rel(called)}"
                )
    return problems


def tfvars_problems(root_dir: Path) -> list[str]:
    problems = []
    declared = declared_variables(root_dir)
    for path in sorted(root_dir.glob("*.tfvars")):
        for key in sorted(set(load_hcl(path)) - declared.keys()):
            problems.append(f"{rel(path)}: {key!r} is not a variable of {rel(root_dir)}")
    return problems


# --- 1. every file parses --------------------------------------------------------------------

TF_FILES = tf_files(TF_DIR)
MODULE_DIRS = tf_module_dirs(TF_DIR)
ROOTS = root_dirs(TF_DIR)


def test_layout_has_the_modules_and_roots():
    names = {rel(d, TF_DIR) for d in MODULE_DIRS}
    for module in (
        "network",
        "cluster",
        "gpu_node_pools",
        "storage",
        "database",
        "iam",
        "app_secrets",
    ):
        assert f"modules/{module}" in names, f"missing module infra/terraform/modules/{module}"
    for env in ("dev", "prod"):
        root = TF_DIR / "envs" / env
        for file in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", f"{env}.tfvars"):
            assert (root / file).is_file(), f"missing {rel(root / file)}"


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: rel(p, TF_DIR))
def test_tf_file_parses(path):
    assert parse_problems([path]) == []


@pytest.mark.parametrize("path", sorted(TF_DIR.rglob("*.tfvars")), ids=lambda p: rel(p, TF_DIR))
def test_tfvars_file_parses(path):
    assert parse_problems([path]) == []


def test_parse_error_names_the_file(tmp_path):
    broken = tmp_path / "broken.tf"
    broken.write_text('variable "x" {\n  type = string\n', encoding="utf-8")
    problems = parse_problems([broken])
    assert len(problems) == 1 and str(broken) in problems[0]


# --- 2. variables, module calls, tfvars ------------------------------------------------------


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=lambda d: rel(d, TF_DIR))
def test_variables_declared_typed_and_described(module_dir):
    assert variable_problems(module_dir) == []


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=lambda d: rel(d, TF_DIR))
def test_module_calls_match_called_variables(module_dir):
    assert module_call_problems(module_dir) == []


@pytest.mark.parametrize("root_dir", ROOTS, ids=lambda d: rel(d, TF_DIR))
def test_tfvars_set_only_declared_variables(root_dir):
    assert list(root_dir.glob("*.tfvars")), f"{rel(root_dir)} has no tfvars file"
    assert tfvars_problems(root_dir) == []


@pytest.mark.parametrize("root_dir", ROOTS, ids=lambda d: rel(d, TF_DIR))
def test_tfvars_environment_is_its_directory(root_dir):
    tfvars = load_hcl(root_dir / f"{root_dir.name}.tfvars")
    assert tfvars.get("environment") == root_dir.name, (
        f"{rel(root_dir)}/{root_dir.name}.tfvars sets environment = "
        f"{tfvars.get('environment')!r}, expected {root_dir.name!r}"
    )


def test_dev_and_prod_roots_have_the_same_wiring():
    """The roots differ only in their tfvars: same variables, same module calls."""

    def wiring(root: Path):
        variables = {
            n: (b.get("type"), "default" in b) for n, b in declared_variables(root).items()
        }
        modules = {n: b for p in module_files(root) for n, b in blocks(load_hcl(p), "module")}
        outputs = {n for p in module_files(root) for n, _ in blocks(load_hcl(p), "output")}
        return variables, modules, outputs

    dev, prod = wiring(TF_DIR / "envs" / "dev"), wiring(TF_DIR / "envs" / "prod")
    for part, a, b in zip(("variables", "module calls", "outputs"), dev, prod, strict=True):
        assert a == b, (
            f"envs/dev and envs/prod {part} differ: {sorted(set(a) ^ set(b)) or 'values'}"
        )


def write_tree(base: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return base


def test_checker_finds_undeclared_and_undescribed_variables(tmp_path):
    module = write_tree(
        tmp_path,
        {
            "variables.tf": (
                'variable "a" {\n  type = string\n}\nvariable "b" {\n  description = "b"\n}\n'
            ),
            "main.tf": 'locals {\n  x = "${var.a}-${var.missing}"\n  y = "var.prose is text"\n}\n',
        },
    )
    problems = variable_problems(module)
    assert any("variables.tf" in p and "'a' has no description" in p for p in problems)
    assert any("variables.tf" in p and "'b' has no type" in p for p in problems)
    assert any("main.tf" in p and "var.missing" in p for p in problems)
    assert not any("prose" in p for p in problems), problems


def test_checker_finds_bad_module_calls(tmp_path):
    write_tree(
        tmp_path,
        {
            "modules/m/variables.tf": (
                'variable "needed" {\n  type = string\n  description = "n"\n}\n'
                'variable "optional" {\n  type = number\n  description = "o"\n  default = 1\n}\n'
            ),
            "root/main.tf": 'module "m" {\n  source = "../modules/m"\n  typo = 1\n}\n',
        },
    )
    problems = module_call_problems(tmp_path / "root")
    assert any("root/main.tf" in p and "'typo'" in p for p in problems), problems
    assert any("root/main.tf" in p and "required variable 'needed'" in p for p in problems)
    assert not any("'optional'" in p for p in problems)


def test_checker_finds_undeclared_tfvars_keys(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "variables.tf": 'variable "a" {\n  type = string\n  description = "a"\n}\n',
            "x.tfvars": 'a = "1"\nstray = 2\n',
        },
    )
    assert tfvars_problems(root) == [
        f"{rel(root / 'x.tfvars')}: 'stray' is not a variable of {rel(root)}"
    ]


# --- contracts with the rest of the repo ---------------------------------------------------


def test_gpu_pools_match_the_prefect_job_template():
    """Labels and taint of the GPU pools are what gpu-job-template.json selects and tolerates."""
    properties = json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))["variables"]["properties"]
    selector = properties["node_selector"]["default"]
    toleration = properties["tolerations"]["default"][0]
    assert list(selector) == ["amalia-vl/pool"]
    for root in ROOTS:
        pools = load_hcl(root / f"{root.name}.tfvars")["gpu_pools"]
        assert selector["amalia-vl/pool"] in pools, (
            f"{rel(root)}/{root.name}.tfvars has no {selector['amalia-vl/pool']!r} GPU pool, "
            "which the job template's nodeSelector asks for"
        )

    main = load_hcl(TF_DIR / "modules" / "gpu_node_pools" / "main.tf")
    groups = [b for r in main["resource"] for b in r.get("aws_eks_node_group", {}).values()]
    assert len(groups) == 1, "expected one aws_eks_node_group (for_each over the pools)"
    group = groups[0]
    assert group["labels"] == {"amalia-vl/pool": "${each.key}"}
    taint = main["locals"][0]["gpu_taint"]
    assert taint["key"] == toleration["key"] == "nvidia.com/gpu"
    assert (toleration["operator"], toleration["effect"]) == ("Exists", "NoSchedule")
    assert taint["effect"] == "NO_SCHEDULE"
    assert group["scaling_config"][0]["min_size"] == "${each.value.min_size}"


def iam_statements(path: Path):
    """(data source name, statement) of every aws_iam_policy_document in a file."""
    for entry in load_hcl(path).get("data", []):
        for name, body in entry.get("aws_iam_policy_document", {}).items():
            for statement in body.get("statement", []):
                yield name, statement


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_no_policy_allows_every_action():
    for path in TF_FILES:
        for name, statement in iam_statements(path):
            if statement.get("effect", "Allow") != "Allow":
                continue
            actions = as_list(statement.get("actions", []))
            assert "*" not in actions, f"{rel(path)}: {name} allows action '*'"


def test_irsa_policies_scope_their_resources():
    """Role policies of the service accounts: no service-wide actions, '*' only for reads."""
    path = TF_DIR / "modules" / "iam" / "main.tf"
    checked = 0
    for name, statement in iam_statements(path):
        if name == "assume":
            continue
        actions = as_list(statement.get("actions", []))
        resources = as_list(statement.get("resources", []))
        checked += 1
        assert not [a for a in actions if a.endswith(":*") or a == "*"], (
            f"{rel(path)}: {name} has a service-wide action: {actions}"
        )
        if "*" in resources:
            writes = [a for a in actions if not re.match(r"^[a-z0-9-]+:(Describe|Get|List)", a)]
            assert not writes, f"{rel(path)}: {name} allows {writes} on '*'"
    assert checked >= 5


@pytest.mark.parametrize("root_dir", ROOTS, ids=lambda d: rel(d, TF_DIR))
def test_root_backend_is_s3_with_lockfile_and_partial(root_dir):
    terraform = [
        block for p in module_files(root_dir) for block in load_hcl(p).get("terraform", [])
    ]
    backends = [b["backend"] for b in terraform if "backend" in b]
    assert len(backends) == 1, f"{rel(root_dir)}: expected one backend block"
    (s3,) = [entry["s3"] for entry in backends[0]]
    assert s3.get("use_lockfile") is True, (
        f"{rel(root_dir)}: S3 backend without use_lockfile = true"
    )
    assert "bucket" not in s3, f"{rel(root_dir)}: bucket belongs in the -backend-config file"
    assert "dynamodb_table" not in s3
    versions = [b for b in terraform if "required_version" in b]
    assert versions and ">= 1.10" in versions[0]["required_version"]
    aws = versions[0]["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws" and aws["version"].startswith("~> ")


# --- 3 and 4. the real terraform binary ------------------------------------------------------


@pytest.fixture(scope="module")
def terraform_bin() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform binary not found on PATH: validation and fmt checks need it")
    return binary


def terraform_env(home: Path) -> dict[str, str]:
    """A clean, offline, fast environment: no plugin cache, no user config, no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "CHECKPOINT"))}
    cli_config = home / "empty.tfrc"
    cli_config.write_text("", encoding="utf-8")
    env.update(
        HOME=str(home),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",  # no version check over the network
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_DATA_DIR=str(home / ".terraform"),
    )
    return env


def run_terraform(binary: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """One terraform command in cwd, which also serves as its HOME and data directory."""
    return subprocess.run(
        [binary, *args],
        cwd=cwd,
        env=terraform_env(cwd),
        capture_output=True,
        text=True,
        timeout=120,
    )


def squash(text: str) -> str:
    """Terraform wraps messages and frames them with box characters: compare words only."""
    return " ".join(re.sub(r"[│╷╵├─]", " ", text).split())


VALIDATION_DIRS = {
    "dev": TF_DIR / "envs" / "dev",
    "prod": TF_DIR / "envs" / "prod",
    "gpu_node_pools": TF_DIR / "modules" / "gpu_node_pools",
    "network": TF_DIR / "modules" / "network",
    "database": TF_DIR / "modules" / "database",
}

# Values every required variable of a module needs, so that only the bad value is refused.
MODULE_BASE_TFVARS = {
    "gpu_node_pools": """
cluster_name  = "amalia-vl-dev"
node_role_arn = "arn:aws:iam::123456789012:role/node"
subnet_ids    = ["subnet-1"]
pools = {
  h100 = { instance_types = ["p5.48xlarge"], gpus_per_node = 8, max_size = 2 }
}
""",
    "network": """
name                    = "amalia-vl-dev"
vpc_cidr                = "10.40.0.0/16"
availability_zones      = ["eu-north-1a", "eu-north-1b"]
single_nat_gateway      = true
cluster_name            = "amalia-vl-dev"
flow_log_retention_days = 365
""",
    "database": """
name                       = "amalia-vl-prod"
environment                = "prod"
vpc_id                     = "vpc-1"
subnet_ids                 = ["subnet-1", "subnet-2"]
allowed_security_group_ids = ["sg-1"]
engine_version             = "17"
instance_class             = "db.r7g.large"
allocated_storage_gib      = 100
max_allocated_storage_gib  = 1000
multi_az                   = true
backup_retention_days      = 30
deletion_protection        = true
log_retention_days         = 365
""",
}


@pytest.fixture(scope="module")
def variables_workdirs(terraform_bin, tmp_path_factory) -> dict[str, Path]:
    """Each VALIDATION_DIRS entry's variables.tf alone in a directory, initialised offline."""
    workdirs = {}
    for key, source in VALIDATION_DIRS.items():
        workdir = tmp_path_factory.mktemp(f"tfvars-{key}")
        shutil.copy(source / "variables.tf", workdir / "variables.tf")
        base = workdir / "base.tfvars"
        if key in MODULE_BASE_TFVARS:
            base.write_text(MODULE_BASE_TFVARS[key], encoding="utf-8")
        else:
            shutil.copy(source / f"{key}.tfvars", base)
        init = run_terraform(
            terraform_bin, ["init", "-backend=false", "-input=false", "-no-color"], workdir
        )
        assert init.returncode == 0, f"terraform init of {rel(source)}/variables.tf:\n{init.stderr}"
        workdirs[key] = workdir
    return workdirs


def plan(binary: str, workdir: Path, override: str | None = None) -> subprocess.CompletedProcess:
    args = ["plan", "-no-color", "-input=false", "-lock=false", "-var-file=base.tfvars"]
    if override is not None:
        (workdir / "bad.tfvars").write_text(override, encoding="utf-8")
        args.append("-var-file=bad.tfvars")  # later var files override earlier ones
    return run_terraform(binary, args, workdir)


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_committed_tfvars_pass_validation(terraform_bin, variables_workdirs, key):
    result = plan(terraform_bin, variables_workdirs[key])
    assert result.returncode == 0, (
        f"infra/terraform/envs/{key}/{key}.tfvars is refused:\n{result.stdout}\n{result.stderr}"
    )


def test_module_base_tfvars_pass_validation(terraform_bin, variables_workdirs):
    """The fixtures the module cases start from are valid, so a refusal is the bad value's."""
    for key in MODULE_BASE_TFVARS:
        result = plan(terraform_bin, variables_workdirs[key])
        assert result.returncode == 0, f"{key} base tfvars refused:\n{result.stderr}"


def pool(name: str = "h100", instance: str = "p5.48xlarge", **fields) -> str:
    """tfvars text of a one-pool gpu_pools map."""
    body = {"instance_types": f'["{instance}"]', "gpus_per_node": "8", "max_size": "2"}
    body.update({k: (f'"{v}"' if isinstance(v, str) else str(v)) for k, v in fields.items()})
    inner = ", ".join(f"{k} = {v}" for k, v in body.items())
    return f"{name} = {{ {inner} }}"


BAD_VALUES = [
    # (id, where, tfvars override, message that must appear)
    (
        "negative-min",
        "dev",
        f"gpu_pools = {{ {pool(min_size=-1)} }}",
        "gpu_pools: min_size, max_size and desired_size must be whole numbers >= 0 "
        "(offending pools: h100)",
    ),
    (
        "negative-desired",
        "prod",
        f"gpu_pools = {{ {pool(desired_size=-1)} }}",
        "must be whole numbers >= 0 (offending pools: h100)",
    ),
    (
        "fractional-max",
        "dev",
        f"gpu_pools = {{ {pool(max_size=1.5)} }}",
        "must be whole numbers >= 0 (offending pools: h100)",
    ),
    (
        "unknown-family-m5",
        "dev",
        f"gpu_pools = {{ {pool(instance='m5.large')} }}",
        "gpu_pools: every instance type must be of a known GPU family",
    ),
    (
        "unknown-family-x9",
        "prod",
        f"gpu_pools = {{ {pool(instance='x9.huge')} }}",
        "not one of: h100=x9.huge",
    ),
    (
        "pool-name-not-its-gpu",
        "dev",
        f"gpu_pools = {{ {pool(instance='g6e.12xlarge')} }}",
        "a pool's name is its amalia-vl/pool label and must name the GPU of its instance types",
    ),
    (
        "min-above-max",
        "dev",
        f"gpu_pools = {{ {pool(min_size=3, desired_size=3, max_size=1)} }}",
        "gpu_pools: min_size must be <= max_size (offending pools: h100)",
    ),
    (
        "desired-above-max",
        "dev",
        f"gpu_pools = {{ {pool(desired_size=5, max_size=2)} }}",
        "gpu_pools: desired_size must be between min_size and max_size (offending pools: h100)",
    ),
    (
        "max-zero",
        "dev",
        f"gpu_pools = {{ {pool(max_size=0)} }}",
        "gpu_pools: max_size must be >= 1",
    ),
    (
        "capacity-type",
        "dev",
        f"gpu_pools = {{ {pool(capacity_type='PREEMPTIBLE')} }}",
        "gpu_pools: capacity_type must be SPOT or ON_DEMAND (offending pools: h100)",
    ),
    (
        "gpus-per-node",
        "dev",
        f"gpu_pools = {{ {pool(gpus_per_node=3)} }}",
        "gpu_pools: gpus_per_node must be 1, 2, 4 or 8",
    ),
    ("no-pools", "dev", "gpu_pools = {}", "gpu_pools must define at least one GPU pool"),
    ("environment", "dev", 'environment = "staging"', "environment must be one of: dev, prod."),
    (
        "cidr-not-a-cidr",
        "dev",
        'vpc_cidr = "10.40.0.0"',
        "vpc_cidr must be a valid IPv4 network CIDR",
    ),
    (
        "cidr-prefix",
        "prod",
        'vpc_cidr = "10.0.0.0/24"',
        "vpc_cidr must be a valid IPv4 network CIDR",
    ),
    (
        "cidr-host-bits",
        "dev",
        'vpc_cidr = "10.40.3.0/16"',
        "vpc_cidr must be a valid IPv4 network CIDR",
    ),
    (
        "azs-not-in-region",
        "dev",
        'availability_zones = ["us-east-1a", "us-east-1b"]',
        "availability_zones must all be zones of var.region",
    ),
    (
        "public-api-open-to-all",
        "dev",
        "cluster_endpoint_public_access = true\n"
        'cluster_endpoint_public_access_cidrs = ["0.0.0.0/0"]',
        "must not include 0.0.0.0/0",
    ),
    (
        "public-api-without-cidrs",
        "dev",
        "cluster_endpoint_public_access = true",
        "cluster_endpoint_public_access = true needs cluster_endpoint_public_access_cidrs",
    ),
    (
        "prod-without-deletion-protection",
        "prod",
        "db_deletion_protection = false",
        "db_deletion_protection must be true in prod.",
    ),
    ("prod-single-az-db", "prod", "db_multi_az = false", "db_multi_az must be true in prod"),
    (
        "prod-force-destroy",
        "prod",
        "storage_force_destroy = true",
        "storage_force_destroy must be false in prod",
    ),
    (
        "no-backups",
        "dev",
        "db_backup_retention_days = 0",
        "db_backup_retention_days must be between 1 and 35",
    ),
    (
        "db-storage-bounds",
        "dev",
        "db_max_allocated_storage_gib = 10",
        "db_max_allocated_storage_gib must be >= db_allocated_storage_gib.",
    ),
    (
        "log-retention",
        "dev",
        "log_retention_days = 42",
        "log_retention_days must be one of the retention periods CloudWatch Logs accepts",
    ),
    # The modules refuse the same mistakes when they are called from elsewhere.
    (
        "module-negative-count",
        "gpu_node_pools",
        f"pools = {{ {pool(min_size=-1)} }}",
        "pools: min_size, max_size and desired_size must be whole numbers >= 0 "
        "(offending pools: h100)",
    ),
    (
        "module-unknown-family",
        "gpu_node_pools",
        f"pools = {{ {pool(instance='m5.large')} }}",
        "pools: every instance type must be of a known GPU family",
    ),
    (
        "module-min-above-max",
        "gpu_node_pools",
        f"pools = {{ {pool(min_size=2, desired_size=2, max_size=1)} }}",
        "pools: min_size must be <= max_size (offending pools: h100)",
    ),
    (
        "module-spot-typo",
        "gpu_node_pools",
        f"pools = {{ {pool(capacity_type='spot')} }}",
        "pools: capacity_type must be SPOT or ON_DEMAND",
    ),
    (
        "module-bad-cidr",
        "network",
        'vpc_cidr = "10.40.0.0/33"',
        "vpc_cidr must be a valid IPv4 network CIDR",
    ),
    (
        "module-one-az",
        "network",
        'availability_zones = ["eu-north-1a"]',
        "availability_zones must list 2 to 6 zones",
    ),
    ("module-prod-single-az", "database", "multi_az = false", "multi_az must be true in prod"),
    (
        "module-prod-unprotected",
        "database",
        "deletion_protection = false",
        "deletion_protection must be true in prod.",
    ),
]


@pytest.mark.parametrize(
    ("where", "override", "message"),
    [case[1:] for case in BAD_VALUES],
    ids=[case[0] for case in BAD_VALUES],
)
def test_validation_refuses_bad_value(terraform_bin, variables_workdirs, where, override, message):
    result = plan(terraform_bin, variables_workdirs[where], override)
    output = squash(result.stdout + result.stderr)
    assert result.returncode != 0, (
        f"{rel(VALIDATION_DIRS[where])}/variables.tf accepted {override!r}:\n{result.stdout}"
    )
    assert "Invalid value for variable" in output, output
    assert squash(message) in output, (
        f"refusing {override!r} did not show {message!r}:\n{result.stderr}"
    )


def test_terraform_fmt(terraform_bin, tmp_path):
    result = subprocess.run(
        [terraform_bin, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
        env=terraform_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        "terraform fmt -check -recursive infra/terraform wants changes "
        f"(run terraform fmt -recursive infra/terraform):\n{result.stdout}{result.stderr}"
    )
