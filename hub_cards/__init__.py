"""Model-card templates for the Hub (rendered by modeling_hvit.hub_card)."""
