"""Errors the services raise; the API turns them into 404/409/403 with the same sentence."""


class ServiceError(Exception):
    status_code = 400


class NotFound(ServiceError, LookupError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError, PermissionError):
    status_code = 403
