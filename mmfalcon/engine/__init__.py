from .deploy import is_deployed, switch_to_deploy

__all__ = ['switch_to_deploy', 'is_deployed']
