"""The gpu-deploy policy pack (CrossGuard). Rules live in policy.validators; __main__.py serves them."""
