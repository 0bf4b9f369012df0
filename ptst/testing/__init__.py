"""Test helpers that ship with ptst so users can smoke-test their own CI offline (fake OpenAI server)."""
