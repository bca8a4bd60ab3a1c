terraform {
  # optional() object attributes: Terraform 1.3 or OpenTofu 1.6.
  required_version = ">= 1.3"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}
