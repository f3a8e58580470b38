"""A Django project and a Flask app pointed at Conveyor as Celery users point them:
``config_from_object(..., namespace="CELERY")``, ``autodiscover_tasks()``,
``@shared_task``, a real worker process on the embedded SQLite broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conveyor_pytest.fixtures import worker_process

from conveyor import Conveyor

FILES = {
    "djproj/__init__.py": "",
    "djproj/settings.py": """
        import os
        SECRET_KEY = "not-secret"
        DEBUG = False
        USE_TZ = True
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop",
                          "billing.apps.BillingConfig"]
        DATABASES = {}
        CELERY_BROKER_URL = os.environ["DJPROJ_BROKER"]
        CELERY_RESULT_BACKEND = os.environ["DJPROJ_BROKER"]
        CELERY_TASK_DEFAULT_QUEUE = "django"
        CELERY_TASK_SERIALIZER = "json"
    """,
    "djproj/settings_typo.py": """
        from .settings import *
        CELERY_TASK_SERIALISER = "json"
    """,
    "djproj/celery.py": """
        import os
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
        from conveyor import Conveyor
        app = Conveyor("djproj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
    """,
    "shop/__init__.py": "",
    "shop/tasks.py": """
        from conveyor import shared_task

        @shared_task
        def total(prices):
            return sum(prices)
    """,
    "billing/__init__.py": "",
    "billing/apps.py": """
        from django.apps import AppConfig

        class BillingConfig(AppConfig):
            name = "billing"
            label = "invoices"
    """,
    "billing/tasks.py": """
        from django.apps import apps
        from conveyor import shared_task

        @shared_task(bind=True)
        def invoice(self, number):
            label = apps.get_app_config("invoices").label  # Django is set up
            return f"{label}-{number}-{self.request.delivery_info['queue']}"
    """,
}


@pytest.fixture
def djproj(tmp_path: Path) -> dict[str, str]:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return {"DJPROJ_BROKER": f"sqlite:///{tmp_path / 'dj.sqlite3'}",
            "PYTHONPATH": str(tmp_path)}


def test_a_django_project_runs_tasks_found_by_autodiscover(tmp_path: Path,
                                                           djproj: dict[str, str]) -> None:
    client = Conveyor("djproj-client", broker=djproj["DJPROJ_BROKER"],
                      backend=djproj["DJPROJ_BROKER"], task_default_queue="django")
    try:
        with worker_process("djproj.celery", env=djproj, cwd=str(tmp_path), pool="threads",
                            concurrency=2, queues=["django"]) as proc:
            assert client.send_task("shop.tasks.total", ([1, 2, 3],)).get(timeout=20) == 6
            assert client.send_task("billing.tasks.invoice", (7,)).get(timeout=20) \
                == "invoices-7-django"
        log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
        assert "shop.tasks.total" in log and "billing.tasks.invoice" in log
    finally:
        client.close()


def test_discovery_waits_until_tasks_are_looked_up(tmp_path: Path,
                                                   djproj: dict[str, str]) -> None:
    script = ("import sys, djproj.celery as c; "
              "print('shop.tasks' in sys.modules, c.app.conf.task_default_queue); "
              "c.app.tasks['shop.tasks.total']; print('shop.tasks' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=60,
                         env={**os.environ, **djproj}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "django", "True"]


def test_a_misspelt_celery_setting_stops_the_worker_naming_it(tmp_path: Path,
                                                              djproj: dict[str, str]) -> None:
    env = {**os.environ, **djproj, "DJANGO_SETTINGS_MODULE": "djproj.settings_typo"}
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", "-A", "djproj.celery",
                          "worker"], cwd=tmp_path, env=env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "CELERY_TASK_SERIALISER" in out.stderr and "task_serializer" in out.stderr


def test_a_flask_app_configures_conveyor_from_its_config(tmp_path: Path) -> None:
    from flask import Flask

    url = f"sqlite:///{tmp_path / 'flask.sqlite3'}"
    web = Flask("shopfront")
    web.config.from_mapping(SECRET_KEY="x", CELERY_BROKER_URL=url,
                            CELERY_RESULT_BACKEND=url, CELERY_RESULT_EXTENDED=True,
                            CELERY=dict(broker_url=url, result_backend=url,
                                        task_ignore_result=True))
    app = Conveyor("flask-proj")
    app.config_from_object(web.config, namespace="CELERY")
    assert (app.conf.broker_url, app.conf.result_backend) == (url, url)
    assert app.conf.result_extended is True and app.conf.task_ignore_result is False
    documented = Conveyor("flask-proj-2")  # Flask's docs: the settings under "CELERY"
    documented.config_from_object(web.config["CELERY"])
    assert documented.conf.task_ignore_result is True

    @app.task
    def greet(name: str) -> str:
        with web.test_request_context(f"/hello/{name}"):
            from flask import request
            return f"hello {name} from {request.path}"

    try:
        with app.Worker(pool="threads", concurrency=2).running():
            assert greet.delay("ada").get(timeout=20) == "hello ada from /hello/ada"
    finally:
        app.close()
        documented.close()
