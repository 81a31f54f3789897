from django.apps import AppConfig


class MashApiConfig(AppConfig):
    name = "mash_api"
    verbose_name = "Mash API"
